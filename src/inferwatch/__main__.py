from inferwatch.cli import app

app()
