"""Enroll service: checks enroll secrets, issues node keys and owns the node records."""
