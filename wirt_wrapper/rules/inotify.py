"""inotify(7)'s numbers, for the watch placer (user side) and root's reading of events.

One definition on both sides of the boundary: the placer asks for
:data:`FOLDER_EVENTS`; root reads only the masks of what comes back
(``wirt_wrapper.root.watch``).  From ``<sys/inotify.h>``; Python has no
module for them.
"""

from __future__ import annotations

__all__ = [
    "FOLDER_EVENTS", "IN_ACCESS", "IN_ATTRIB", "IN_CLOEXEC", "IN_CLOSE_WRITE", "IN_CREATE",
    "IN_DELETE", "IN_DELETE_SELF", "IN_DONT_FOLLOW", "IN_IGNORED", "IN_ISDIR", "IN_MODIFY",
    "IN_MOVED_FROM", "IN_MOVED_TO", "IN_MOVE_SELF", "IN_NONBLOCK", "IN_ONLYDIR",
    "IN_Q_OVERFLOW",
]

# events (the mask inotify_add_watch takes, and each event's mask)
IN_ACCESS, IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE = 0x1, 0x2, 0x4, 0x8
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x40, 0x80, 0x100, 0x200
IN_DELETE_SELF, IN_MOVE_SELF = 0x400, 0x800
# only in an event's mask
IN_Q_OVERFLOW, IN_IGNORED, IN_ISDIR = 0x4000, 0x8000, 0x40000000
# only for inotify_add_watch
IN_ONLYDIR, IN_DONT_FOLLOW = 0x01000000, 0x02000000
# for inotify_init1 (O_CLOEXEC, O_NONBLOCK)
IN_CLOEXEC, IN_NONBLOCK = 0o2000000, 0o4000

# what the placer watches on each folder: an entry made, moved in or out, removed,
# written or touched; the folder itself removed or moved
FOLDER_EVENTS = (IN_CREATE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE | IN_CLOSE_WRITE
                 | IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF)
