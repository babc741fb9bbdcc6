"""Two tiny work chains for the tests of ``submit_once`` and ``EndsInterruptedFunctions`` through the daemon: a
parent whose one step submits a child under a fixed call link label, and a child that does nothing but report that it
ran (the tests count those reports). They live in this installed package so that daemon workers can load them from a
checkpoint."""

from aiida.engine import ToContext, WorkChain

from aiida_alml.workflows.submission import EndsInterruptedFunctions, submit_once

CHILD_LABEL = 'child'


class ReportsOnce(WorkChain):
    """Reports 'ran' and ends. ``parent_pid`` (which ``WorkChain`` does not take) lets a test make it as the child of
    a parent it is not running, as a killed worker would have left it."""

    def __init__(self, *args, parent_pid=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._parent_pid = parent_pid  # read when the node is stored, after __init__

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.outline(cls.run_once)

    def run_once(self):
        self.report('ran')


class SubmitsOneChild(EndsInterruptedFunctions, WorkChain):
    """Submits one ``ReportsOnce`` with ``submit_once`` and fails unless it finished."""

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.outline(cls.launch, cls.check)
        spec.exit_code(400, 'ERROR_CHILD_FAILED', message='the child did not finish')

    def launch(self):
        return ToContext(child=submit_once(self, ReportsOnce, metadata={'call_link_label': CHILD_LABEL}))

    def check(self):
        if not self.ctx.child.is_finished_ok:
            return self.exit_codes.ERROR_CHILD_FAILED
