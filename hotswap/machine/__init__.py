"""The running machine: KVM platform, vCPU threads, devices, event loop, state capture and restore."""
