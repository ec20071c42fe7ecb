from rsa.cli import run

run()
