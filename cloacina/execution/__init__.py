"""Execution: the run coordinator shared by every dispatcher, and the boundary around user task code."""
