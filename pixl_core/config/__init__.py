"""What an operator and a reviewer configure: projects, tag allow-lists and their PS3.15 audit."""
