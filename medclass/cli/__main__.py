from medclass.cli import entry

entry()
