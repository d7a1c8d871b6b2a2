"""The control API: HTTP+JSON over a unix socket (curl --unix-socket works), like Firecracker and Cloud Hypervisor."""
