"""`python -m ttsplan` runs the CLI."""
from ttsplan.cli import app

app()
