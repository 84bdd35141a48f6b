from dfa.cli import main

raise SystemExit(main())
