"""The prediction log's revisions, oldest first: 0001 (the schema create_all made), 0002 (monitoring columns),
0003 (slice attributes, feedback index), 0004 (the A/B rollup state)."""
