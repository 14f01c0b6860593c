"""adamx's transformations, one module per algorithm family."""
