"""File formats read and written on the AiiDA side (no AiiDA import): FHI-aims ``control.in``/``geometry.in`` and
``aims.out``, MACE training options. Calculations, parsers and workflows use them; nothing on the compute node does.
"""
