"""Local stand-ins for the external systems we cannot reach, each following its vendor's published API."""
