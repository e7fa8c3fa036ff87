"""Small local HTTP servers that speak the providers' real wire formats."""
