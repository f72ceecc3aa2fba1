"""Built-in backends. Each module is an ordinary plugin using the public ``hookimpl`` marker."""
