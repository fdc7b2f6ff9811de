"""Apps for ``cloacina run`` subprocess tests (a package only so that its conftest gets a unique module name)."""
