from django.core.management.base import BaseCommand, CommandError

from agents_app.models import Persona
from training_tasks.simulation import DEFAULT_RULE, RULES, simulate_players


class Command(BaseCommand):
    help = (
        "Scripted players talk to a persona through the real engine (VOYAGER_BASE_MODEL and the persona's "
        "active adapter) and rate every reply by a hidden rule the model does not know "
        "(default: the reply greets them)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--persona", required=True, help="persona slug")
        parser.add_argument("--replies", type=int, default=200, help="how many replies to generate and rate")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--rule", choices=RULES, default=DEFAULT_RULE, help="the players' hidden taste")
        parser.add_argument("--turns", type=int, default=4, help="player turns per conversation")

    def handle(self, *args, **options):
        persona = Persona.objects.filter(slug=options["persona"]).first()
        if persona is None:
            raise CommandError(f"no persona {options['persona']!r}")
        if options["replies"] < 1:
            raise CommandError("--replies must be at least 1")
        report = simulate_players(
            persona=persona,
            replies=options["replies"],
            seed=options["seed"],
            turns=max(1, options["turns"]),
            rule=options["rule"],
            log=lambda m: self.stderr.write(m),
        )
        self.stdout.write(
            f"{report.replies} replies rated for {persona.slug}: {report.liked} liked "
            f"({report.rate:.1%}), {report.errors} errors, {report.seconds:.1f}s"
        )
