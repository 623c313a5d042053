"""The main command's story: a simulated world, its progress on the terminal, its state, records and report."""
