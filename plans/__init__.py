"""The built-in planner presets (the ``*.toml`` files of this folder), installed as the package
``medmamba_plans`` so that a regular install ships them; read by :mod:`medmamba.planning.presets`."""
