"""Simulated production traffic: replaying labelled text through the real serving API, day by day, with shifts."""
