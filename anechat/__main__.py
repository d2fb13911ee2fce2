from anechat.cli import main

raise SystemExit(main())
