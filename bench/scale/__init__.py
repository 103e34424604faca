"""make scale: where each tier of Paddock saturates as simulated hosts grow (README.md)."""
