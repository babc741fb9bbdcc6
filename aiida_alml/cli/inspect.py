"""``aiida-alml lineage | export``: where a model's data came from, and a campaign's results as plain files."""

from __future__ import annotations

import json
import pathlib
import shutil

import click

from aiida_alml.cli.options import PROFILE, load_profile
from aiida_alml.workflows.links import ACTIVE_LEARNING


def _load(identifier: str):
    from aiida import orm
    from aiida.common.exceptions import MultipleObjectsError, NotExistent

    try:
        return orm.load_node(identifier)
    except (NotExistent, MultipleObjectsError) as exception:
        raise click.ClickException(f'{identifier}: {exception}')


def _load_model(identifier: str):
    from aiida_alml.data import MlipModel

    node = _load(identifier)
    if not isinstance(node, MlipModel):
        raise click.ClickException(
            f'node {identifier} is a {type(node).__name__}, not an MlipModel (alml.model): lineage starts from a '
            'trained model, e.g. an output `models.member_0` of an alml.active_learning run'
        )
    return node


def _iteration_name(iteration) -> str:
    if iteration is None:
        return 'iteration unknown'
    return 'initial labels' if iteration == -1 else f'iteration {iteration}'


def _compact(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(', ', ': '))


def format_lineage(lineage: dict) -> str:
    """The lineage of :func:`aiida_alml.provenance.model_lineage` as an indented tree."""
    from aiida_alml.data.model import file_name_problem

    model = lineage['model']
    # A name from an imported archive may hold terminal control sequences: such a name is shown escaped.
    name = model['filename'] if file_name_problem(model['filename']) is None else json.dumps(model['filename'])
    lines = [
        f'MlipModel<{model["pk"]}> {name}  {model["architecture"]}, elements {",".join(model["elements"])}'
        f', r_max {model["r_max"]} Å, {model["dtype"]}, sha256 {model["sha256"][:12]}…'
    ]
    training = lineage['training']
    if training is None:
        lines.append('└── no training calculation: the model was stored by hand')
        return '\n'.join(lines)
    where = []
    if training.get('member'):
        where.append(f'{training["member"]} of alml.committee<{training["committee"]}>')
    if training.get('workflow') is not None:
        where.append(f'{_iteration_name(training.get("iteration"))} of alml.active_learning<{training["workflow"]}>')
    lines.append(f'└── trained by {training["process_type"]}<{training["pk"]}>' + (f' ({"; ".join(where)})'
                                                                               if where else ''))
    for name in ('seed', 'e0s', 'parameters'):
        if name in training:
            lines.append(f'    {name}: {_compact(training[name])}')
    for name in ('parent_model', 'validation_set', 'test_set'):
        if name in training:
            lines.append(f'    {name}: <{training[name]["pk"]}>')
    training_set = lineage['training_set']
    if training_set is None:
        lines.append('    └── no training set recorded')
        return '\n'.join(lines)
    lines.append(f'    └── training set ConfigurationSet<{training_set["pk"]}>: '
                 f'{training_set["num_configurations"]} configurations of {",".join(training_set["elements"] or [])}, labels '
                 f'{",".join(training_set["labels"] or [])}')
    entries = lineage['labelling_calculations']
    leftover = lineage['unattributed_configurations']
    for index, calc in enumerate(entries):
        last = index == len(entries) - 1 and not leftover
        branch, indent = ('└──', '    ') if last else ('├──', '│   ')
        lines.append(f'        {branch} {calc["num_configurations"]} labelled by {calc["process_type"]}<{calc["pk"]}>'
                     f' ({_iteration_name(calc["iteration"])})')
        for name, value in calc['settings'].items():
            lines.append(f'        {indent}    {name}: {_compact(value)}')
        if calc['code']:
            lines.append(f'        {indent}    code: {calc["code"]["label"]}<{calc["code"]["pk"]}>')
    if leftover:
        lines.append(f'        └── {leftover} without a labelling calculation in the graph (given as data)')
    return '\n'.join(lines)


@click.command()
@PROFILE
@click.argument('node')
@click.option('--json', 'as_json', is_flag=True, help='Print the lineage as JSON.')
def lineage(profile_name, node, as_json):
    """Lineage of the model NODE (PK or UUID): training → training set → labelling calculations and settings."""
    load_profile(profile_name)
    from aiida_alml.provenance import model_lineage

    result = model_lineage(_load_model(node))
    click.echo(json.dumps(result, indent=1, sort_keys=True) if as_json else format_lineage(result))


def _model_file_names(models: dict) -> dict:
    """{output key: file name} of the models to export, each checked to be a plain name before anything is written.

    Both become parts of a path below the export directory, and both come from the database, where a node imported
    from an archive can carry any link label and any ``filename`` attribute: ``../..`` would climb out.
    """
    from aiida_alml.data import MlipModel, ModelIntegrityError
    from aiida_alml.data.model import file_name_problem

    names = {}
    for key, model in sorted(models.items()):
        if (problem := file_name_problem(key)):
            raise click.ClickException(f'output models.{key!r}: the link label is not a plain file name ({problem}): '
                                       'refusing to export (aiida-alml never makes such a label; an imported archive '
                                       'can)')
        if not isinstance(model, MlipModel):
            raise click.ClickException(f'output models.{key}: a {type(model).__name__}, not an MlipModel')
        try:
            names[key] = model.plain_filename()
        except ModelIntegrityError as exception:
            raise click.ClickException(f'models.{key}: {exception}')
    return names


#: What ``export --format mace`` says about the extra files, in the CLI output, its --help and docs/tutorial.md.
MACE_PICKLE_WARNING = ('MACE model files are pickles: loading one runs the code it names. Write and load them only for '
                       'tools that read nothing else (MACECalculator, mace_run_train --foundation_model, '
                       'mace_create_lammps_model); share the .alml files, which load without running code.')


def _mace_file_name(key: str, alml_name: str) -> str:
    """The name of member ``key``'s MACE model file next to its .alml file (``key`` is a checked plain name)."""
    name = f'{key}.model'
    return name if name != alml_name else f'{key}.mace.model'


@click.command()
@PROFILE
@click.argument('pk')
@click.argument('directory', type=click.Path(file_okay=False, path_type=pathlib.Path))
@click.option('--format', 'model_format', type=click.Choice(['alml', 'mace']), default='alml', show_default=True,
              help="alml: each member's model file as stored (config + weights; loaded without running code). "
                   "mace: ALSO, per member, MACE's own model file models/<member>/<member>.model, rebuilt from the "
                   'hash-checked .alml file and written with torch.save. THOSE FILES ARE PICKLES: loading one runs '
                   'the code it names. Only for tools that read nothing else: MACECalculator(model_paths=...), '
                   'mace_run_train --foundation_model, mace_create_lammps_model.')
def export(profile_name, pk, directory, model_format):
    """Write the final models, dataset, learning curve and provenance of the alml.active_learning run PK to DIRECTORY.

    Files: models/<member>/<model file> (hash-checked), dataset.extxyz (MACE's REF_* keys), learning_curve.json and
    provenance.json (the lineage of member_0); with --format mace also models/<member>/<member>.model (MACE's own
    model file: a pickle, see --format). Existing files are never overwritten.
    """
    load_profile(profile_name)
    from aiida_alml.data import ModelIntegrityError
    from aiida_alml.provenance import model_lineage

    node = _load(pk)
    if node.process_type != ACTIVE_LEARNING:
        raise click.ClickException(f'node {pk} is a {type(node).__name__} ({node.process_type}), not an '
                                   'alml.active_learning run')
    outputs = node.outputs
    missing = [name for name in ('models', 'dataset', 'learning_curve') if name not in outputs]
    if missing:
        state = node.process_state.value if node.process_state else 'created'
        raise click.ClickException(f'alml.active_learning<{node.pk}> ({state}) has no output {", ".join(missing)}: '
                                   'nothing to export before the run has finished')
    models = dict(outputs.models.items())
    if 'member_0' not in models:
        raise click.ClickException(f'alml.active_learning<{node.pk}> has no output models.member_0')

    names = _model_file_names(models)
    targets = {key: directory / 'models' / key / name for key, name in names.items()}
    mace_targets = ({key: directory / 'models' / key / _mace_file_name(key, name) for key, name in names.items()}
                    if model_format == 'mace' else {})
    files = [*targets.values(), *mace_targets.values(),
             *(directory / name for name in ('dataset.extxyz', 'learning_curve.json', 'provenance.json'))]
    existing = [str(path) for path in files if path.exists() or path.is_symlink()]
    if existing:
        raise click.ClickException(f'{directory}: would overwrite {", ".join(existing)}; choose an empty directory')

    for key, model in sorted(models.items()):
        targets[key].parent.mkdir(parents=True, exist_ok=True)
        try:
            # 'xb': never through a file or link that appeared since the check above.
            with model.verified_path() as path, open(path, 'rb') as source, open(targets[key], 'xb') as target:
                shutil.copyfileobj(source, target)
                if key in mace_targets:
                    _write_mace_file(key, path, mace_targets[key])
        except ModelIntegrityError as exception:
            raise click.ClickException(f'models.{key}: {exception}')
        click.echo(f'models.{key}: MlipModel<{model.pk}> -> {targets[key]}')
        if key in mace_targets:
            click.echo(f'models.{key}: MACE model file (a pickle) -> {mace_targets[key]}')
    if mace_targets:
        click.echo(f'Note: {MACE_PICKLE_WARNING}')
    outputs.dataset.write_extxyz(directory / 'dataset.extxyz')
    click.echo(f'dataset: {len(outputs.dataset)} configurations -> {directory / "dataset.extxyz"}')
    (directory / 'learning_curve.json').write_text(json.dumps(outputs.learning_curve.get_dict(), indent=1) + '\n')
    provenance = {'workflow': {'pk': node.pk, 'uuid': node.uuid}, **model_lineage(models['member_0'])}
    (directory / 'provenance.json').write_text(json.dumps(provenance, indent=1, sort_keys=True) + '\n')
    click.echo(f'learning curve and provenance (lineage of member_0) -> {directory}')


def _write_mace_file(key: str, verified: pathlib.Path, target: pathlib.Path) -> None:
    """MACE's model file of member ``key``, rebuilt from its hash-checked file ``verified`` (read without unpickling)."""
    from aiida_alml.engines.model_format import ModelFormatError, write_mace_pickle

    try:
        with open(target, 'xb') as handle:  # 'xb': as for the .alml file
            write_mace_pickle(verified, handle)
    except ModelFormatError as exception:
        raise click.ClickException(f'models.{key}: {exception}')
