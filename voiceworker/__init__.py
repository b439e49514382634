"""The voice worker: one process per guild voice session.

Not built yet: the package holds its place in the layout.
"""
