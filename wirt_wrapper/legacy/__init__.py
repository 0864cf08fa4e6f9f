"""What exists for the old ``virsh_wrapper.sh`` users: ``wirt-migrate-legacy`` (as the user)."""
