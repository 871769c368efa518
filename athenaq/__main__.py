from athenaq.main import run

run()
