from django import forms
from django.contrib.auth import get_user_model
from django.contrib.auth.forms import UserCreationForm

from agents_app.models import PairwiseVote
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


class PlayerLinkForm(forms.Form):
    player_name = forms.CharField(max_length=20, label="Your name in game")


class RatingForm(forms.Form):
    score = forms.TypedChoiceField(choices=[("1", "👍"), ("-1", "👎")], coerce=int)
    tags = forms.MultipleChoiceField(choices=list(REASON_TAGS.items()), required=False)
    reason = forms.CharField(max_length=500, required=False)


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
