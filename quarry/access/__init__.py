"""Access to the admin API: tokens, roles and the audit log."""
