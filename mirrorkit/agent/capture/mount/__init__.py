"""The ``mount`` capture method (FUSE) comes with the mount-capture issue; nothing here yet."""
