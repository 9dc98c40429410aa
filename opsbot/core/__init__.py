"""The headless core of opsbot: every front end calls it, none of it knows about them.

This package must never import textual or slack_bolt (tests/test_headless.py checks).
"""
