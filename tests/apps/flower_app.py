"""A one-task workflow for the Flower test: ``flower_wf`` with task ``hello``."""

import cloacina as cloaca

with cloaca.WorkflowBuilder("flower_wf"):

    @cloaca.task(id="hello")
    def hello(context):
        context.set("hello", "world")
        return context
