"""Definition side of the API: tasks, workflows, triggers, retry policies, trigger rules, durations."""
