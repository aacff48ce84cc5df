"""Boot the exact cloud-init user-data in systemd-nspawn containers on a private network (make boot-test)."""
