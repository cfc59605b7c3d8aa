"""Layer plans: typed records of how a basis becomes a few tensor operations."""
