"""The engine: run state machine, context merge and trigger-rule evaluation. Pure, no I/O."""
