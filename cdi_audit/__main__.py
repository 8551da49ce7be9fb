from cdi_audit.cli import main

main()
