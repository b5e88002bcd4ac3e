"""The channel registry: every adapter, by name, in one place."""

from bot.channels.email import EmailChannel
from bot.channels.messenger import InstagramChannel, MessengerChannel
from bot.channels.telegram import TelegramChannel
from bot.channels.webchat import WebchatChannel
from bot.channels.webhook import WebhookChannel
from bot.channels.whatsapp import WhatsAppChannel

CHANNELS = {
    WebchatChannel.name: WebchatChannel,
    TelegramChannel.name: TelegramChannel,
    WebhookChannel.name: WebhookChannel,
    EmailChannel.name: EmailChannel,
    WhatsAppChannel.name: WhatsAppChannel,
    MessengerChannel.name: MessengerChannel,
    InstagramChannel.name: InstagramChannel,
}
