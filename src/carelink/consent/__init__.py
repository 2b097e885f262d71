"""Reserved for the consent issue; see DESIGN.md."""
