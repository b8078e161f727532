# Private personas shared with other game servers (agents_app.visibility).

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('agents_app', '0005_persona_repetition_penalty'),
    ]

    operations = [
        migrations.CreateModel(
            name='PersonaShare',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('created_at', models.DateTimeField(auto_now_add=True)),
                ('game_server', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='persona_shares', to='agents_app.gameserver')),
                ('persona', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='shares', to='agents_app.persona')),
            ],
            options={
                'ordering': ['persona', 'game_server'],
                'constraints': [models.UniqueConstraint(fields=('persona', 'game_server'), name='persona_share_once_per_server')],
            },
        ),
    ]
