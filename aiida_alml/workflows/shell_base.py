"""``alml.shell.base``: run aiida-shell's ``core.shell`` (the shell labeller's job), again when its node failed."""

from __future__ import annotations

from aiida_shell import ShellJob

from aiida_alml.workflows.base import JobBaseWorkChain

__all__ = ('ShellBaseWorkChain',)


class ShellBaseWorkChain(JobBaseWorkChain):
    """Run one :class:`aiida_shell.ShellJob` (inputs in namespace ``shell``) and return all its outputs (the files it
    retrieved among them); a job the scheduler lost with its node (AiiDA's ``ERROR_SCHEDULER_NODE_FAILURE``) is run
    again unchanged (see :mod:`aiida_alml.workflows.base`)."""

    _process_class = ShellJob
    _inputs_namespace = 'shell'

    def results(self):
        """Attach every output of the last job: a ShellJob's outputs are dynamic (one per retrieved file)."""
        node = self.ctx.children[self.ctx.iteration - 1]
        self.report(f'work chain completed after {self.ctx.iteration} iterations')
        for label, output in self.exposed_outputs(node, self.process_class).items():
            self.out(label, output)
