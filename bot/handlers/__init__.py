"""Platform-neutral flows: one function per command or button action, answering with Screens."""
