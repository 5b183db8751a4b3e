"""Not yet implemented: see the project's open issues."""
