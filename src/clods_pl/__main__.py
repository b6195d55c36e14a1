"""``python -m clods_pl`` runs the ``clods-pl`` command line."""

from clods_pl.pipeline.cli import main

if __name__ == "__main__":
    main()
