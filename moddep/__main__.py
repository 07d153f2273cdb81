from moddep.cli import main

raise SystemExit(main())
