"""Reserved for the audit issue; see DESIGN.md."""
