"""Device models as state machines. They know neither KVM nor the VMM: a bus calls read/write, an InterruptLine
raises interrupts, GuestMemory gives access to guest RAM, and save()/restore() carry their state."""
