"""Reserved for the export issue; see DESIGN.md."""
