from lowrank.cli.main import run

run()
