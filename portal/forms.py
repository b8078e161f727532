from django import forms
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import get_user_model
from django.contrib.auth.forms import AuthenticationForm, UserCreationForm

from agents_app.models import PairwiseVote
from portal.login_throttle import LoginAttempt, LoginThrottled, client_address
from portal.selectors import REASON_TAGS


class SignupForm(UserCreationForm):
    email = forms.EmailField(required=True, help_text="For password resets only; never shown.")

    class Meta(UserCreationForm.Meta):
        model = get_user_model()
        fields = ("username", "email")

    def clean_email(self):
        email = self.cleaned_data["email"].strip().lower()
        if get_user_model().objects.filter(email__iexact=email).exists():
            raise forms.ValidationError("An account with this email already exists; reset its password instead.")
        return email


class ThrottledLoginMixin:
    """A login form that counts failures (``portal.login_throttle``) and refuses, with a message, past the limit."""

    throttled: LoginThrottled | None = None

    def clean(self):
        username, password = self.cleaned_data.get("username"), self.cleaned_data.get("password")
        if username is None or not password:
            return super().clean()
        attempt = LoginAttempt(username=username, address=client_address(self.request))
        try:
            attempt.check()
        except LoginThrottled as exc:
            self.throttled = exc
            raise forms.ValidationError(str(exc), code="throttled") from None
        try:
            cleaned = super().clean()
        except forms.ValidationError:
            attempt.failed()
            raise
        attempt.succeeded()
        return cleaned


class LoginForm(ThrottledLoginMixin, AuthenticationForm):
    pass


class AdminLoginForm(ThrottledLoginMixin, AdminAuthenticationForm):
    pass


class PlayerLinkForm(forms.Form):
    player_name = forms.CharField(max_length=20, label="Your name in game")


class ModderRequestForm(forms.Form):
    motivation = forms.CharField(
        max_length=1000,
        label="What would you like to build?",
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="A persona or two, an adapter you trained: a sentence is enough.",
    )


class RatingForm(forms.Form):
    score = forms.TypedChoiceField(choices=[("1", "👍"), ("-1", "👎")], coerce=int)
    tags = forms.MultipleChoiceField(choices=list(REASON_TAGS.items()), required=False)
    reason = forms.CharField(max_length=500, required=False)


class PersonaCatalogForm(forms.Form):
    q = forms.CharField(required=False, max_length=100, label="Search")
    tag = forms.CharField(required=False, max_length=80)
    sort = forms.CharField(required=False, max_length=20)


class FeedFilterForm(forms.Form):
    persona = forms.SlugField(required=False, max_length=63)
    server = forms.IntegerField(required=False, min_value=1)
    mine = forms.BooleanField(required=False)
    unrated = forms.BooleanField(required=False)
    cursor = forms.CharField(required=False, max_length=200)


class PairwiseVoteForm(forms.Form):
    left = forms.UUIDField()
    right = forms.UUIDField()
    outcome = forms.ChoiceField(choices=PairwiseVote.Outcome.choices)


def form_errors(form) -> str:
    """One line naming each bad field, for JSON answers and messages."""
    return "; ".join(f"{name}: {' '.join(errors)}" for name, errors in form.errors.items())


class LinesField(forms.CharField):
    """A list typed one item a line (or, with ``words``, separated by commas or spaces); blanks dropped."""

    widget = forms.Textarea(attrs={"rows": 4, "cols": 50})

    def __init__(self, *, words: bool = False, **kwargs):
        self.words = words
        super().__init__(required=False, **kwargs)

    def prepare_value(self, value):
        if isinstance(value, list | tuple):
            return "\n".join(str(item) for item in value)
        return value

    def to_python(self, value) -> list[str]:
        text = super().to_python(value)
        if self.words:
            return text.replace(",", " ").split()
        return [line.strip() for line in text.splitlines() if line.strip()]


class PersonaForm(forms.Form):
    """A persona's settings as the edit page shows them; the service checks the values."""

    name = forms.CharField(max_length=80)
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 3, "cols": 70}), required=False)
    traits = LinesField(help_text="One short phrase a line, e.g. 'gruff' or 'knows the mines'.")
    system_prompt = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 6, "cols": 70}),
        required=False,
        help_text="What the model is told before every conversation.",
    )
    allowed_actions = LinesField(
        words=True,
        help_text="Action names this persona may take (say, jump, face, follow, stop_following, move, give, ...), "
        "separated by commas, spaces or lines; anything else is blocked.",
    )
    temperature = forms.FloatField(help_text="0 to 2: higher answers vary more.")
    top_p = forms.FloatField(label="Top p", help_text="Above 0, up to 1.")
    max_tokens = forms.IntegerField(
        label="Max tokens", help_text="1 to 512: the longest reply; one that reaches it ends on a whole sentence."
    )
    repetition_penalty = forms.FloatField(
        label="Repetition penalty",
        required=False,
        help_text="1 to 2: above 1, replies repeat themselves less (1: off). Empty: as it was (a new persona: 1.15).",
    )
    is_public = forms.BooleanField(required=False, label="Public", help_text="Anyone may see it and its replies.")

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("repetition_penalty") is None:
            cleaned.pop("repetition_penalty", None)  # not given: the service keeps its value or default
        return cleaned


class PersonaCreateForm(PersonaForm):
    slug = forms.CharField(
        max_length=63,
        help_text="The name servers use (/npc spawn smith): lowercase letters, digits, '-' and '_'. "
        "It cannot change later.",
    )
    field_order = ["slug", "name"]


class GameServerForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="Yours to tell your servers apart, e.g. 'Survival world'.")


class PersonaShareForm(forms.Form):
    server = forms.IntegerField(
        min_value=1,
        label="Game server id",
        help_text="The id its owner sees on their Servers page. That server's NPCs may then speak as this "
        "persona while it is private; nobody gains sight of it on the portal.",
    )
