"""Shipped specs: task / mixture YAML and gin files (installed via package_dir)."""
