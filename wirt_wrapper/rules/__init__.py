"""Pure rules shared by every zone: actions, the protocol, layouts, names, formats, errors."""
