"""Local stand-ins and process management for the demo and the system tests."""
