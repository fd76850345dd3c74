"""OCI execution: runtime handlers, runc/conmon, namespaces, mounts, cgroups."""
